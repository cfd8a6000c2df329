"""sac/api/service/<path>: the JupyterLab sidebar's calls to the `sac` service.

The sidebar runs on the agent's own origin, which the sandbox controls (anything
the agent writes can end up running there), so it must not hold the person's
authority. It reaches the service through this relay, which adds this agent's own
token: the page gets exactly what the sandbox already has, and the service decides
what that is (docs/security.md#principals): read this agent's record, usage,
history, requests and installed skills, browse and install skills, author its
owner's private skills, restart itself. Decisions, settings, keys and sharing are
made by the person on the service's own pages, which the sidebar opens.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import httpx
from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import ApiError
from .base import SacHandler

# The JSON bodies the sidebar sends are small; the service's own limit is 1 MiB.
MAX_BODY_BYTES = 1024 * 1024
# Response headers worth passing on (a CSV export names its file; ETags).
PASSED_HEADERS = ("Content-Type", "Content-Disposition", "ETag", "Cache-Control")
_PATH = re.compile(r"[A-Za-z0-9._~%/@+-]+")


def relay_path(raw: str) -> str | None:
    """The service API path the sidebar asked for, kept percent-encoded as it came;
    None if it could step out of ``api/`` (a ``.`` or ``..`` segment, even encoded)."""
    if not raw or not _PATH.fullmatch(raw) or raw.startswith("/"):
        return None
    if any(unquote(segment) in ("", ".", "..") for segment in raw.split("/")):
        return None
    return raw


class ServiceRelayHandler(SacHandler):
    """Any method on sac/api/service/<path>: the same request to the service's
    ``api/<path>`` with this agent's token; the answer streamed back as it is.

    Authorised on the ``sac`` resource by method: reading for GET, writing for
    the rest (the agent's token may install skills or restart the agent)."""

    @property
    def client(self) -> httpx.AsyncClient:
        return self.settings["sac_service_client"].client

    @property
    def base(self) -> str:
        return self.settings["sac_service_client"].base

    @web.authenticated
    @authorized
    async def get(self, _: str) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def post(self, _: str) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def put(self, _: str) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def patch(self, _: str) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def delete(self, _: str) -> None:
        await self._relay()

    async def _relay(self) -> None:
        prefix = self.base_url + "sac/api/service/"
        raw = self.request.path[len(prefix) :] if self.request.path.startswith(prefix) else ""
        path = relay_path(raw)
        if path is None:
            raise ApiError(400, "invalid_path", "not a service API path")
        body = self.request.body or None
        if body is not None and len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
        headers = {}
        if body is not None:
            headers["Content-Type"] = self.request.headers.get("Content-Type", "application/json")
        if self.request.headers.get("If-None-Match"):
            headers["If-None-Match"] = self.request.headers["If-None-Match"]
        url = self.base + path + (f"?{self.request.query}" if self.request.query else "")
        try:
            async with self.client.stream(
                self.request.method, url, content=body, headers=headers
            ) as resp:
                self.set_status(resp.status_code)
                self.clear_header("Content-Type")
                for name in PASSED_HEADERS:
                    if name in resp.headers:
                        self.set_header(name, resp.headers[name])
                async for chunk in resp.aiter_bytes():
                    self.write(chunk)
                    await self.flush()
        except httpx.HTTPError as e:
            if self._headers_written:
                raise
            raise ApiError(
                502, "service_unreachable", f"the sac service is unreachable: {type(e).__name__}"
            ) from e
        self.finish()
