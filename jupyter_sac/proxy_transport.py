"""An httpx transport for processes that cannot resolve the public names (the `sac`
service on the hub's machine, pods without wildcard DNS): every request goes to the
proxy's address, keeping its public host in the Host header (``urls.via_proxy``)."""

from __future__ import annotations

import httpx

from .rules.urls import via_proxy


class ProxyTransport(httpx.AsyncBaseTransport):
    """An httpx transport that connects every request to the proxy at ``proxy_url``
    and keeps the request's public host in its Host header (see ``via_proxy``)."""

    def __init__(self, proxy_url: str, transport: httpx.AsyncBaseTransport | None = None):
        self.proxy_url = proxy_url
        self.transport = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target, host = via_proxy(str(request.url), self.proxy_url)
        if host is not None:
            headers = httpx.Headers(request.headers)
            headers["Host"] = host
            request = httpx.Request(
                request.method,
                target,
                headers=headers,
                stream=request.stream,
                extensions=request.extensions,
            )
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()
