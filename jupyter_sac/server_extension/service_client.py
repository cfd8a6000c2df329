"""The sandbox's one connection to the `sac` service: one client with the agent's
token for every part of the extension (each used to open its own), and one
without it for the object store."""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Callable
from typing import Any

import httpx

WAIT_SLICE = 25  # seconds per long-poll to the service
# Calls to the service: answers are small, or streamed (the relay).
SERVICE_TIMEOUT = httpx.Timeout(60, connect=10)
# Whole files, to and from the service or the object store.
TRANSFER_TIMEOUT = httpx.Timeout(300, connect=10)


class ServiceError(Exception):
    pass


_tls_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """One TLS context per process for the CA settings in the environment
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``), as httpx would make it: loading the CA
    bundle takes tens of milliseconds a time, and a pre-imported sandbox makes it
    before it knows its agent (launcher.py)."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _tls_contexts.get(key)
    if context is None:
        context = _tls_contexts[key] = httpx.create_ssl_context()
    return context


class ServiceClient:
    """The sandbox's view of the `sac` service, authenticated by its agent token.

    The extension makes one and closes it at its stop; the history uploader, the
    workspace and skill syncs, HITL and the sidebar's relay all use ``client``
    (one connection pool, one place that holds the token) with their own
    per-request timeouts where the default does not fit."""

    def __init__(self, base_url: str, token: str, redact: Callable[[Any], Any] | None = None):
        self.base = base_url.rstrip("/") + "/api/"
        # What a HITL request shows of a tool call passes through this first: the
        # sandbox's secrets never reach the service (rules/secrets.py: Redactor).
        self.redact: Callable[[Any], Any] = redact or (lambda value: value)
        # Without both there is nothing to talk to (a server outside a spawner).
        self.configured = self.base.startswith("http") and bool(token)
        tls = tls_context()
        self.client = httpx.AsyncClient(
            timeout=SERVICE_TIMEOUT, headers={"Authorization": f"Bearer {token}"}, verify=tls
        )
        # Downloads from the object store, by the presigned URLs the service hands
        # out (skill bundles, workspace files): they carry their own signature, and
        # the agent's token must never reach the object store, so no credentials here.
        self.plain = httpx.AsyncClient(timeout=TRANSFER_TIMEOUT, verify=tls)

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = await self.client.request(method, self.base + path, **kw)
        except httpx.HTTPError as e:
            raise ServiceError(f"the sac service is unreachable: {type(e).__name__}") from e
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message") or resp.text
            except ValueError:
                message = resp.text
            raise ServiceError(f"HTTP {resp.status_code}: {message[:300]}")
        return resp.json() if resp.content else {}

    async def report_turn(self, report: dict[str, Any]) -> dict[str, Any]:
        """Tell the service a chat turn finished (its owner's event stream and
        webhooks), the answer's words scrubbed of the sandbox's secrets."""
        return await self._call("POST", "agent/events", json=self.redact(report))

    async def hitl_info(self) -> dict[str, Any]:
        return await self._call("GET", "agent/hitl")

    async def file_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "hitl/requests", json=self.redact(body))

    async def wait(self, request_id: str, timeout: int = WAIT_SLICE) -> dict[str, Any]:
        return await self._call(
            "GET",
            f"hitl/requests/{request_id}/wait",
            params={"timeout": timeout},
            # the service holds the request up to ``timeout`` seconds: wait longer
            timeout=httpx.Timeout(timeout + 15, connect=10),
        )

    async def cancel(self, request_id: str) -> dict[str, Any]:
        return await self._call("POST", f"hitl/requests/{request_id}/cancel")

    async def skills_manifest(self, etag: str | None) -> tuple[str, list[dict[str, Any]]] | None:
        """(etag, installed skills), or None when they are unchanged since ``etag``."""
        headers = {"If-None-Match": etag} if etag else {}
        try:
            resp = await self.client.get(self.base + "agent/skills", headers=headers)
        except httpx.HTTPError as e:
            raise ServiceError(f"the sac service is unreachable: {type(e).__name__}") from e
        if resp.status_code == 304:
            return None
        if resp.status_code != 200:
            raise ServiceError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        return data["etag"], data["skills"]

    async def skill_bundles(self, ids: list[int]) -> dict[str, bytes]:
        """Bundles of installed skills in one request, by sha256; big ones are left
        out (fetch those with ``skill_bundle``)."""
        data = await self._call("POST", "agent/skills/bundles", json={"ids": ids})
        try:
            bundles = data["bundles"].items()
            return {sha: base64.b64decode(b64, validate=True) for sha, b64 in bundles}
        except (KeyError, AttributeError, ValueError) as e:
            raise ServiceError(f"bad bundles answer: {type(e).__name__}") from e

    async def skill_bundle(self, skill_id: int, presigned_url: str | None) -> bytes:
        """An installed skill's bundle: from the object store when the service gave a
        presigned URL (no credentials of ours go there), else through the service."""
        try:
            if presigned_url:
                resp = await self.plain.get(presigned_url)
            else:
                resp = await self.client.get(self.base + f"agent/skills/{skill_id}/bundle")
        except httpx.HTTPError as e:
            raise ServiceError(f"bundle download failed: {type(e).__name__}") from e
        if resp.status_code != 200:
            raise ServiceError(f"bundle download failed: HTTP {resp.status_code}")
        return resp.content

    async def close(self) -> None:
        await self.client.aclose()
        await self.plain.aclose()
