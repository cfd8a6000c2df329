"""The credential proxy: an Anthropic-compatible endpoint for sandboxes.

A sandbox's ANTHROPIC_BASE_URL points here and its ANTHROPIC_API_KEY is a
per-agent token. The proxy maps the token to the agent, injects the real key
(the agent's own, decrypted, or the organisation's) and the provider's base URL,
streams the response back unchanged, and meters requests and tokens per agent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
from tornado import web

from .. import settings as sac_settings
from ..budgets import refusal as budget_refusal
from ..providers import ProviderError, auth_headers, upstream_base_url
from ..store.usage import USAGE_FIELDS, UsageDelta
from . import metrics
from .base import StreamedBody

log = logging.getLogger("jupyter_sac.llm_proxy")

# Request headers never forwarded upstream: hop-by-hop, our auth, and encodings
# (responses must arrive uncompressed so usage can be read from them).
DROP_REQUEST_HEADERS = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "te",
    "trailer",
    "x-api-key",
    "authorization",
    "cookie",
    "accept-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
}
DROP_RESPONSE_HEADERS = {
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "set-cookie",
    "server",
    "date",
}
ALLOWED_PATHS = {"v1/messages", "v1/messages/count_tokens"}
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_METERED_JSON_BYTES = 8 * 1024 * 1024


class UsageMeter:
    """Reads Anthropic usage from a response as it streams past (SSE or JSON)."""

    def __init__(self, streaming: bool):
        self.streaming = streaming
        self._buffer = b""
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self.usage = UsageDelta(requests=1)

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            self._json_size += len(chunk)
            if self._json_size <= MAX_METERED_JSON_BYTES:
                self._json_parts.append(chunk)
            return
        self._buffer += chunk
        # Events end with a blank line; a CRLF split across chunks stays in the buffer.
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            self._event(event)

    def _event(self, raw: bytes) -> None:
        data = b"".join(
            line[5:].lstrip()
            for line in raw.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        )
        if not data:
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        if payload.get("type") == "message_start":
            self._add((payload.get("message") or {}).get("usage") or {})
        elif payload.get("type") == "message_delta":
            self._add(payload.get("usage") or {})

    def _add(self, usage: dict[str, Any]) -> None:
        # Anthropic's counts are cumulative for a message (message_delta repeats or
        # raises them), so the largest value seen is the message's count.
        for key in USAGE_FIELDS:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self.usage, key, max(getattr(self.usage, key), value))

    def finish(self) -> UsageDelta:
        if not self.streaming and self._json_parts:
            try:
                payload = json.loads(b"".join(self._json_parts))
                if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                    self._add(payload["usage"])
            except ValueError:
                pass
        elif self.streaming and self._buffer.strip():
            self._event(self._buffer)
            self._buffer = b""
        return self.usage


def anthropic_error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps(
        {"type": "error", "error": {"type": kind, "message": message}}
    ).encode()


@web.stream_request_body
class LlmProxyHandler(StreamedBody, web.RequestHandler):
    """POST <prefix>llm/v1/messages[...]: authenticated by the per-agent token.

    Request bodies may be tens of MiB (images, documents): the body is streamed, and
    taken only once the path and the token are good, so nobody else can make the
    service hold more than SERVER_BODY_BYTES."""

    @property
    def sac(self):
        return self.settings["sac"]

    def _fail(self, status: int, kind: str, message: str) -> None:
        status, body = anthropic_error(status, kind, message)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def _token(self) -> str | None:
        token = self.request.headers.get("x-api-key")
        if token:
            return token.strip()
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    async def _over_budget(self, agent: Any) -> str | None:
        """Why this agent may not call the model now (its or its owner's monthly
        token budget is spent), or None. Checked before each call, so calls already
        under way may take a budget a little past its limit."""
        store = self.sac.store
        system, user = await store.settings.for_user(agent.owner)
        resolved = sac_settings.resolve(system, user, agent.overrides)
        if not resolved["agent_monthly_tokens"] and not resolved["user_monthly_tokens"]:
            return None
        agent_used, user_used = await store.usage.month_tokens(agent.id, agent.owner)
        return budget_refusal(resolved, agent_used, user_used, datetime.now(UTC).date())

    def on_finish(self) -> None:
        started = getattr(self, "_started", None)
        if started is not None:
            metrics.observe_proxy(self._provider, self.get_status(), started, self._usage)

    async def prepare(self) -> None:
        self._started, self._provider, self._usage = time.monotonic(), "unknown", None
        if self.request.method != "POST":
            return  # 405 from tornado, without reading a body
        if self.path_args[0] not in ALLOWED_PATHS:
            return self._fail(404, "not_found_error", f"/{self.path_args[0]} is not proxied")
        token = self._token()
        agent = await self.sac.store.tokens.agent(token) if token else None
        if agent is None:
            return self._fail(
                401,
                "authentication_error",
                "invalid agent token: restart the agent to get a new one",
            )
        self._agent, self._provider = agent, agent.provider
        self._chunks: list[bytes] = []
        if not self.accept_body(MAX_REQUEST_BYTES, self._chunks.append):
            return self._fail(413, "request_too_large", "request body too large")

    async def post(self, path: str) -> None:
        if self.body_too_large:
            return self._fail(413, "request_too_large", "request body too large")
        agent, store = self._agent, self.sac.store
        try:
            key = (
                self.sac.keybox.decrypt(agent.encrypted_key)
                if agent.encrypted_key
                else self.sac.org_keys.get(agent.provider)
            )
            base = upstream_base_url(agent.provider, agent.base_url, self.sac.provider_base_urls)
        except (ValueError, ProviderError) as e:
            return self._fail(500, "api_error", f"agent misconfigured: {e}")
        if not key:
            return self._fail(
                401,
                "authentication_error",
                f"no {agent.provider} key is configured for agent {agent.slug!r}:"
                " set one on the agent or ask an administrator for an"
                " organisation key",
            )
        if path == "v1/messages" and (refused := await self._over_budget(agent)):
            # 429 as the model API says "rate limited", but not worth retrying: the
            # Anthropic SDKs (and so Claude Code) honour x-should-retry.
            self.set_header("x-should-retry", "false")
            return self._fail(429, "rate_limit_error", refused)
        headers = {
            k: v for k, v in self.request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS
        }
        headers.update(auth_headers(agent.provider, key))
        headers["Accept-Encoding"] = "identity"
        url = f"{base}/{path}"
        if self.request.query:
            url += "?" + self.request.query
        # The body goes upstream as it was received, without joining it into one
        # more copy of up to 32 MiB.
        chunks, self._chunks = self._chunks, []
        headers["Content-Length"] = str(self.body_size)

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        meter: UsageMeter | None = None
        try:
            async with self.sac.upstream.stream(
                "POST", url, content=body(), headers=headers
            ) as resp:
                self.set_status(resp.status_code)
                for name, value in resp.headers.items():
                    if name.lower() not in DROP_RESPONSE_HEADERS:
                        self.set_header(name, value)
                streaming = "text/event-stream" in resp.headers.get("content-type", "")
                meter = UsageMeter(streaming) if resp.status_code < 400 else None
                async for chunk in resp.aiter_raw():
                    if meter is not None:
                        meter.feed(chunk)
                    self.write(chunk)
                    if streaming:
                        await self.flush()
        except httpx.HTTPError as e:
            log.warning("upstream %s failed for agent %s/%s: %s", base, agent.owner, agent.slug, e)
            if not self._headers_written:
                return self._fail(
                    502, "api_error", f"the model provider could not be reached: {type(e).__name__}"
                )
            return self.finish()
        finally:
            delta = meter.finish() if meter is not None else UsageDelta(requests=1)
            self._usage = delta
            if path == "v1/messages":
                try:
                    await store.usage.record(agent.id, agent.owner, agent.slug, delta)
                except Exception:
                    log.exception("could not record usage for %s/%s", agent.owner, agent.slug)
        self.finish()
