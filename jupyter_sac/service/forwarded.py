"""Which address a request came from, when the hub's proxy stands in front.

tornado's ``xheaders=True`` takes ``X-Real-Ip`` (first) and ``X-Forwarded-For``
from whoever connects, so any client could write the address the audit log keeps.
Here the connection's own peer is the client, unless that peer is one of the
configured proxies (``c.SacService.trusted_proxies``); then it is the right-most
``X-Forwarded-For`` entry, the one that proxy appended (configurable-http-proxy
appends the address it received the request from; entries to the left of it are
whatever the client sent). ``X-Real-Ip`` is never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from tornado import httputil, web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Where `sac up` runs configurable-http-proxy: on this machine.
LOOPBACK = ("127.0.0.0/8", "::1/128")
# Where the proxy pod is on Kubernetes: the pod network, whose range the chart does
# not know; these are the private and shared ranges clusters take pod addresses from.
PRIVATE_NETWORKS = (
    *LOOPBACK,
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed (CIDRs; a bare address is a /32
    or /128). Raises ValueError on an entry that is not a network."""

    def __init__(self, cidrs: Iterable[str]):
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()
        )

    def trusts(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in net for net in self.networks)

    def client_ip(self, peer: str, forwarded_for: list[str]) -> str:
        """The client's address: ``peer`` (the connection's), or, when ``peer`` is a
        trusted proxy, the last address in its ``X-Forwarded-For`` headers. A last
        entry that is not an address leaves the peer: nothing else there is the proxy's."""
        if not self.trusts(peer):
            return peer
        entries = [e for header in forwarded_for for e in header.split(",")]
        appended = _address(entries[-1]) if entries else None
        return str(appended) if appended is not None else peer


class ForwardedApplication(web.Application):
    """A tornado Application that sets ``request.remote_ip`` (and ``protocol``) from the
    proxy's headers only for trusted proxies. Use it with ``xheaders=False``: every
    handler, the access log and HubOAuth's log then see the same address."""

    def __init__(self, handlers: Any, trusted: TrustedProxies, **settings: Any):
        super().__init__(handlers, **settings)
        self.trusted = trusted

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> web._HandlerDelegate:
        # Called once per request, before any handler exists: the one place that
        # sees every request, whatever route it takes.
        peer = request.remote_ip or ""
        if self.trusted.trusts(peer):
            request.remote_ip = self.trusted.client_ip(
                peer, request.headers.get_list("X-Forwarded-For")
            )
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip()
            if proto in ("http", "https"):
                request.protocol = proto
        return super().find_handler(request, **kwargs)
