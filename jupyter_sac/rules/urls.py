"""Where a browser finds the hub, the `sac` service and agents (pure, no I/O).

With JupyterHub's ``subdomain_host`` (the default of `sac up`), each part has a
host of its own, so sandbox-served pages never share an origin with the hub or
the service:

- the hub: ``http://localhost:8000/hub/`` (``subdomain_host`` + base URL);
- the service: ``http://sac--service.localhost:8000/services/sac/``;
- a user's servers (agents): ``http://alice.localhost:8000/user/alice/<agent>/``;
  every named server of one user shares the user's host.

Host names come from JupyterHub's default ``subdomain_hook`` ("idna"): names
that are not DNS-safe are encoded (``Ann.Lee`` -> ``u-annlee--<hash>``).
Without ``subdomain_host`` everything is a path on one origin, and the URLs
built here are paths (as JupyterHub's own are).

Also here: ``via_proxy``, where to send a request for a public URL inside a
machine or cluster: the proxy's address, with the public host in the ``Host``
header so the proxy's host routing still finds the target. Processes that cannot
resolve the public names (the `sac` service on the hub's machine, pods without
wildcard DNS) use it, through ``jupyter_sac.proxy_transport`` for httpx.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

SERVICE_NAME = "sac"


def _subdomain(name: str, domain: str, kind: str) -> str:
    from jupyterhub.utils import subdomain_hook_idna

    return subdomain_hook_idna(name, domain, kind)


def url_escape(name: str) -> str:
    """A user or server name in a URL path, escaped as JupyterHub escapes it."""
    return quote(name, safe="@~")


@dataclass(frozen=True)
class PublicUrls:
    """The public URLs of one hub. ``host`` is JupyterHub's ``subdomain_host``
    (``http://localhost:8000``), empty without subdomains; ``base_url`` is
    JupyterHub's base URL."""

    host: str = ""
    base_url: str = "/"

    @classmethod
    def from_config(cls, c: Any) -> PublicUrls:
        """From a hub's configuration (JupyterHub.subdomain_host and base_url)."""
        hub = c.JupyterHub
        host = (hub.get("subdomain_host") or "").rstrip("/")
        base_url = hub.get("base_url") or "/"
        return cls(host, base_url if base_url.endswith("/") else base_url + "/")

    @classmethod
    def for_hub(cls, hub_url: str) -> PublicUrls:
        """The layout `sac up` gives a hub whose public URL is ``hub_url``: hosts of
        their own under the hub's host when it is reached by a name; one origin
        (paths only) when by an address, which cannot have subdomains."""
        parts = urlsplit(hub_url)
        base_url = parts.path.rstrip("/") + "/"
        if not parts.hostname or is_ip(parts.hostname):
            return cls("", base_url)
        return cls(f"{parts.scheme}://{parts.netloc}", base_url)

    @classmethod
    def from_env(cls) -> PublicUrls:
        """From the variables JupyterHub gives its services and single-user servers."""
        return cls(
            os.environ.get("JUPYTERHUB_HOST", ""), os.environ.get("JUPYTERHUB_BASE_URL") or "/"
        )

    @property
    def subdomains(self) -> bool:
        return bool(self.host)

    @property
    def domain(self) -> str:
        """The hub's host name (``localhost``); empty without subdomains."""
        return (urlsplit(self.host).hostname or "") if self.host else ""

    def _origin(self, hostname: str) -> str:
        parts = urlsplit(self.host)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{hostname}{port}"

    @property
    def hub(self) -> str:
        """The hub's base URL (its pages are under ``hub/``)."""
        return f"{self.host}{self.base_url}"

    @property
    def users_origin(self) -> str:
        """A CSP source for every user's host (``http://*.localhost:8000``); empty
        without subdomains."""
        return self._origin(f"*.{self.domain}") if self.subdomains else ""

    def service_host(self, name: str = SERVICE_NAME) -> str:
        return _subdomain(name, self.domain, "service") if self.subdomains else ""

    def user_host(self, user: str) -> str:
        return _subdomain(user, self.domain, "user") if self.subdomains else ""

    def service(self, name: str = SERVICE_NAME) -> str:
        """The service's public URL (``…/services/sac/``)."""
        origin = self._origin(self.service_host(name)) if self.subdomains else ""
        return f"{origin}{self.base_url}services/{name}/"

    def server(self, user: str, server_name: str = "") -> str:
        """A user's (named) server's public URL, as the hub's server model has it."""
        origin = self._origin(self.user_host(user)) if self.subdomains else ""
        path = f"{self.base_url}user/{url_escape(user)}/"
        if server_name:
            path += f"{url_escape(server_name)}/"
        return origin + path

    def host_names(self, user: str | None = None) -> list[str]:
        """The host names a sandbox of ``user`` needs: the hub's, the service's and
        its owner's (never another user's). Empty without subdomains."""
        if not self.subdomains:
            return []
        names = [self.domain, self.service_host()]
        if user is not None:
            names.append(self.user_host(user))
        return names


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def default_service_url(hub_url: str, name: str = SERVICE_NAME) -> str:
    """The service beside a hub whose public URL is ``hub_url``, as `sac up` lays
    them out (``PublicUrls.for_hub``): ``sac--service.<hub host>``, or
    ``<hub>/services/sac/`` for a hub reached by its address."""
    return urljoin(hub_url, PublicUrls.for_hub(hub_url).service(name))


def via_proxy(url: str, proxy_url: str) -> tuple[str, str | None]:
    """Where to send a request for ``url`` when public names are reached through
    the proxy at ``proxy_url``: (the URL to connect to, the Host header to send).
    Without a proxy, or for a URL without a host, the URL itself and no header."""
    parts = urlsplit(url)
    if not proxy_url or not parts.netloc:
        return url, None
    proxy = urlsplit(proxy_url)
    scheme = proxy.scheme
    if parts.scheme in ("ws", "wss"):
        scheme = "wss" if proxy.scheme == "https" else "ws"
    return urlunsplit((scheme, proxy.netloc, parts.path, parts.query, "")), parts.netloc
